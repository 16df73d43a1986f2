"""strainstream.sxdm"""
