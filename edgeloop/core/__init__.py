"""The ground every package stands on: settings, the params file's schema, errors."""
