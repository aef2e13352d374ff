"""multisk.metrics"""
