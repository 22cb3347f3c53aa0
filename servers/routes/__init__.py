"""Thin HTTP routes: parse (protocol models), await the engine, shape the answer."""
