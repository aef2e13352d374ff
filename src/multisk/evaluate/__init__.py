"""multisk.evaluate"""
