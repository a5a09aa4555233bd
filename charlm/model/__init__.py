"""The network: the recurrent cells (a registry), the stack, and its regularisers."""
