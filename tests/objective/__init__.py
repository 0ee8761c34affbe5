"""Tests of drgrpo.objective (a package so that the tests can import ``.reference``)."""
