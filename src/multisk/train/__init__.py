"""multisk.train"""
