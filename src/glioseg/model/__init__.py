"""glioseg.model"""
