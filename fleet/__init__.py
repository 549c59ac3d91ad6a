"""The fleet side: the on-device agent (``fleet.agent``) and, later, the controller and simulator."""
