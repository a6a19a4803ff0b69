"""The OpenStack home's deployment side: Qinling function packages and their entry point,
the Heat template and the bootstrap script (docs/openstack.md)."""
