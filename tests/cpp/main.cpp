// The Boost.Test entry point for the C++ suites.
#define BOOST_TEST_MODULE pgwire_proxy
#include <boost/test/unit_test.hpp>
