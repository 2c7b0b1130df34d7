"""glioseg.analysis"""
