/* SPDX-License-Identifier: MIT */
/*
 * kvs_tests: runs the CUnit suites of every module. With no argument it runs them all; with
 * one argument it runs only the suite of that name (CTest runs each suite this way).
 * Exits 0 only when every test that ran passed.
 *
 *   build/bin/kvs_tests            # all suites
 *   build/bin/kvs_tests record     # one suite
 */
#include <stdio.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "suites.h"

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    int found = 0;
    int failed;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "kvs_tests: cannot initialise CUnit: %s\n", CU_get_error_msg());
        return 2;
    }
    for (const struct kvs_test_suite *s = kvs_test_suites; s->name != NULL; s++) {
        if (only != NULL && strcmp(only, s->name) != 0)
            continue;
        s->reg();
        found++;
    }
    if (found == 0) {
        fprintf(stderr, "kvs_tests: no suite named '%s'\n", only != NULL ? only : "");
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failed = (int)(CU_get_number_of_failures() + CU_get_number_of_tests_failed());
    if (CU_get_error() != CUE_SUCCESS)
        failed++;
    CU_cleanup_registry();
    return failed == 0 ? 0 : 1;
}
