"""Real servers (Swift all-in-one, Zaqar) started on loopback for the tests, each from its venv."""
