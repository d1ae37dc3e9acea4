//! Empty until its first code lands.
