"""glioseg.report"""
