"""The clocks as a fleet: the site CA (PKI), provisioning bundles, the broker's
configuration and process, and the device view that ops read."""
