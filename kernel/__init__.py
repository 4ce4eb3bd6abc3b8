"""The kernel layer every other folder shares: namespaces, links, addresses, routes,
neighbours, sysctls, GSO limits, and the iptables and ipset appliers.

It imports nothing of Tartan's other packages; they import it.
"""
