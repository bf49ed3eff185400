"""Root conftest of the example repository.

Where a user registers their own providers or gate policies, e.g.::

    from pytest_selfopt.models.base import register_provider
    register_provider("my-gateway", my_factory)

    def pytest_selfopt_register_policies(policies):
        policies["strict"] = MyPolicy()
"""
