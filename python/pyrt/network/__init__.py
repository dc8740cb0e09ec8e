"""Networks: a container's private one, shared pyrt.Networks, published ports' links."""
