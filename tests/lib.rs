//! Shared fixtures for the workspace-level tests in this folder.
