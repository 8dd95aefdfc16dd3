"""The cluster a run uses: starting or joining Ray, and which device each resource is."""
