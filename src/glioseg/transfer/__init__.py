"""glioseg.transfer"""
