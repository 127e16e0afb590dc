"""Operating xlt: Prometheus metrics of the controller (metrics, state), the HTTP endpoint
(server), and the shipped Prometheus alerting rules and Grafana dashboard (files/)."""
