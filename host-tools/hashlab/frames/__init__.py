"""Frames to send: the scapy-built corpus, the hostile set, filler traffic, pcap files."""
