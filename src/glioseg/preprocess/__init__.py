"""glioseg.preprocess"""
