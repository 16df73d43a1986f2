"""strainstream.xrd"""
