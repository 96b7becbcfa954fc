"""The lab of real tools: network namespaces, real servers and attack tools, labelled captures."""
