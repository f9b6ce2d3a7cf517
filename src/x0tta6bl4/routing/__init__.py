"""Sans-IO routing: link quality (hello/IHU, ETX, RTT) and Babel-style loop-free distance
vector (RFC 8966). Imports nothing of the project but its errors."""
