//! Pure rules that map an object key to what Perch does with it.
//! No I/O: the gateway and the cache ask, the policy answers.
