"""Matching observations against expectations. Pure: failures are results, never exceptions."""
