"""Sans-IO routing: link quality (hello/IHU, ETX, RTT), Babel-style loop-free distance
vector (RFC 8966) and the metric they share (``metric.INFINITY``). Imports nothing of the
project but its errors and the sans-IO actions (``SetTimer``)."""
