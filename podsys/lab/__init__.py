"""The local lab cluster: container nodes on a private network, for trying and testing podsys."""
