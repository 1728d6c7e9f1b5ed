pytest_plugins = [
    "tests.support.idp_plugin",
    "tests.support.pg_plugin",
    "tests.support.proxy_plugin",
    "tests.support.enforcement_plugin",
    "tests.support.masking",
]
