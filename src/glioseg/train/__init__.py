"""glioseg.train"""
