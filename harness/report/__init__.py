"""Reports: console lines and tables, JSON results, JUnit XML."""
