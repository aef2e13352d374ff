"""multisk.sinkhorn"""
