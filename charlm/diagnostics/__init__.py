"""Seeing inside: gradient flow, activation probes, the models a figure compares, figures."""
