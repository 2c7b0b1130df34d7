"""glioseg.data"""
