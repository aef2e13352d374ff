"""multisk.losses"""
