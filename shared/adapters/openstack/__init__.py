"""OpenStack adapters: Swift (StateStore, BlobStore), Keystone and the rest, via openstacksdk."""
