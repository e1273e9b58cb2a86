//! OpenPGP (in progress)
