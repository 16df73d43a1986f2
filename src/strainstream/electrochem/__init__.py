"""strainstream.electrochem"""
