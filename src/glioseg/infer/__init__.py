"""glioseg.infer"""
