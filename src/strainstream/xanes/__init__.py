"""strainstream.xanes"""
