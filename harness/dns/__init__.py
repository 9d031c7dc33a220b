"""DNS for the hermetic network: zone files for the NSD container and a preflight that checks them."""
