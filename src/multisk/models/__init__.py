"""multisk.models"""
