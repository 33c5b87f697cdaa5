"""podsys runtime on the head: the install status service only."""
