"""Library code shared by the functions, the engine and the guest agent."""
