"""glioseg.evaluate"""
