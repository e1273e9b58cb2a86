//! OpenStack Swift as an `object_store::ObjectStore` (being written).
