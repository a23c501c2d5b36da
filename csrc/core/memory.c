#include "memory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The number in a file such as memory.max; 0 for "max", a missing file or anything else. */
static size_t read_bytes(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    unsigned long long value = 0;
    if (fscanf(f, "%llu", &value) != 1)
        value = 0;
    fclose(f);
    return (size_t)value;
}

/* Whether the comma-separated list names the controller. */
static int lists(const char *controllers, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = controllers; (p = strstr(p, name)) != NULL; p += len)
        if ((p == controllers || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
            return 1;
    return 0;
}

/* The lowest memory limit of this process's cgroup and of the cgroups above it (v2 memory.max; v1
 * memory.limit_in_bytes, whose "no limit" is a number larger than any machine's memory); 0: none found. */
static size_t cgroup_memory_limit(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return 0;
    char line[4096], path[8192];
    size_t lowest = 0;
    while (fgets(line, sizeof line, f)) {
        /* "0::/path" (v2) or "N:cpu,memory:/path" (v1) */
        line[strcspn(line, "\n")] = '\0';
        char *first = strchr(line, ':'), *second = first ? strchr(first + 1, ':') : NULL;
        if (!second)
            continue;
        *second = '\0';
        const char *root = "/sys/fs/cgroup", *file = "memory.max";
        if (first[1] != '\0') {
            if (!lists(first + 1, "memory"))
                continue;
            root = "/sys/fs/cgroup/memory";
            file = "memory.limit_in_bytes";
        }
        char *dir = second + 1;
        for (;;) { /* from the process's cgroup up to the root */
            if (strcmp(dir, "/") == 0)
                dir[0] = '\0';
            snprintf(path, sizeof path, "%s%s/%s", root, dir, file);
            size_t limit = read_bytes(path);
            if (limit && (!lowest || limit < lowest))
                lowest = limit;
            char *slash = strrchr(dir, '/');
            if (!slash)
                break;
            *slash = '\0';
        }
    }
    fclose(f);
    return lowest;
}

size_t dfc_default_memory_limit(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0)
        return 0; /* unknown: no limit */
    size_t physical = (size_t)pages / 10 * 9 * (size_t)page, cgroup = cgroup_memory_limit();
    return cgroup && cgroup / 10 * 9 < physical ? cgroup / 10 * 9 : physical;
}

size_t dfc_available_memory(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    fclose(f);
    return (size_t)kib * 1024;
}
