//! ward's DNS side: which `destination_fqdn` rules a queried name matches, the cache of
//! addresses learned from answers, and the `Learner` that hands them to a data plane.
