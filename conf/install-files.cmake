# install-files.cmake — run by `cmake --install` (and CPack): the installed
# files that name paths, written for the prefix of this install
# (CMAKE_INSTALL_PREFIX here is `--prefix` when given, else the configured
# one), and the state directory.  DESTDIR is honoured (file(INSTALL) prepends
# it), and every file lands in the install manifest.  docs/installation.md.
#
# Input: guardian-install-vars.cmake (GUARDIAN_BUILT_<VAR>: the configure-time
# values), included just before this file.

function(guardian_install_files)
  foreach(v IN ITEMS CMAKE_INSTALL_BINDIR CMAKE_INSTALL_SBINDIR CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_INCLUDEDIR
                     CMAKE_INSTALL_DATADIR CMAKE_INSTALL_SYSCONFDIR CMAKE_INSTALL_LOCALSTATEDIR
                     GUARDIAN_P11KIT_MODULE_DIR GUARDIAN_SYSTEMD_UNIT_DIR GUARDIAN_DEFAULT_BACKEND
                     GUARDIAN_SERVICE_USER GUARDIAN_SERVICE_GROUP GUARDIAN_OPERATORS_GROUP GUARDIAN_TOKEN_LABEL
                     GUARDIAN_RUNTIME_DIR_NAME P11KIT_TOOL P11KIT_CLIENT_MODULE PROJECT_VERSION)
    set(${v} "${GUARDIAN_BUILT_${v}}")
  endforeach()
  # What the programs have compiled in stays the configure-time prefix's.
  set(GUARDIAN_DEFAULT_CONF "${GUARDIAN_BUILT_GUARDIAN_DEFAULT_CONF}")
  include("${GUARDIAN_BUILT_CMAKE_SOURCE_DIR}/conf/paths.cmake")
  guardian_install_paths("${CMAKE_INSTALL_PREFIX}")
  set(GUARDIAN_DEFAULT_STATE_DIR "${GUARDIAN_STATE_DIR}") # guardian.conf names this install's

  set(src "${GUARDIAN_BUILT_CMAKE_SOURCE_DIR}")
  set(gen "${GUARDIAN_BUILT_CMAKE_BINARY_DIR}/install-files")
  file(REMOVE_RECURSE "${gen}")
  configure_file("${src}/conf/guardian.module.in" "${gen}/guardian.module" @ONLY)
  configure_file("${src}/conf/guardian-pkcs11.pc.in" "${gen}/guardian-pkcs11.pc" @ONLY)
  configure_file("${src}/conf/guardian.conf.in" "${gen}/guardian.conf" @ONLY)
  configure_file("${src}/conf/guardian-pkcs11.service.in" "${gen}/guardian-pkcs11.service" @ONLY)
  configure_file("${src}/tools/guardian-service-setup.in" "${gen}/guardian-service-setup" @ONLY)

  set(rw OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  file(INSTALL DESTINATION "${GUARDIAN_FULL_P11KIT_MODULE_DIR}" TYPE FILE PERMISSIONS ${rw}
       FILES "${gen}/guardian.module")
  file(INSTALL DESTINATION "${GUARDIAN_FULL_LIBDIR}/pkgconfig" TYPE FILE PERMISSIONS ${rw}
       FILES "${gen}/guardian-pkcs11.pc")
  file(INSTALL DESTINATION "${GUARDIAN_CONF_DIR}" TYPE FILE PERMISSIONS ${rw} FILES "${gen}/guardian.conf")
  file(INSTALL DESTINATION "${GUARDIAN_FULL_SYSTEMD_UNIT_DIR}" TYPE FILE PERMISSIONS ${rw}
       FILES "${gen}/guardian-pkcs11.service")
  file(INSTALL DESTINATION "${GUARDIAN_FULL_SBINDIR}" TYPE PROGRAM FILES "${gen}/guardian-service-setup")

  # The state directory, as the module makes it (store/store.c): 0700, the
  # installing account's.  One that exists is a Guardian's state: left as it
  # is (the module checks it at its first use; guardian-service-setup gives
  # it to the service's account).
  if(EXISTS "$ENV{DESTDIR}${GUARDIAN_STATE_DIR}")
    message(STATUS "Kept: $ENV{DESTDIR}${GUARDIAN_STATE_DIR} (exists: the module checks its owner and mode)")
  else()
    get_filename_component(name "${GUARDIAN_STATE_DIR}" NAME)
    get_filename_component(parent "${GUARDIAN_STATE_DIR}" DIRECTORY)
    file(MAKE_DIRECTORY "${gen}/state/${name}")
    file(INSTALL DESTINATION "${parent}" TYPE DIRECTORY FILES "${gen}/state/${name}"
         DIR_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE)
  endif()

  # file(INSTALL) listed them in this function's scope: the install manifest
  # (install_manifest.txt) is the caller's.
  set(CMAKE_INSTALL_MANIFEST_FILES "${CMAKE_INSTALL_MANIFEST_FILES}" PARENT_SCOPE)

  if(NOT CMAKE_INSTALL_PREFIX STREQUAL GUARDIAN_BUILT_CMAKE_INSTALL_PREFIX)
    message(WARNING "Installing under ${CMAKE_INSTALL_PREFIX}, but the build was configured for "
                    "${GUARDIAN_BUILT_CMAKE_INSTALL_PREFIX}: the installed files name ${CMAKE_INSTALL_PREFIX}'s "
                    "paths, while the module's default configuration file stays ${GUARDIAN_DEFAULT_CONF} "
                    "(set GUARDIAN_CONF=${GUARDIAN_CONF_DIR}/guardian.conf) and guardianctl's default module "
                    "${GUARDIAN_BUILT_GUARDIAN_MODULE_PATH} (pass --module ${GUARDIAN_MODULE_PATH}). "
                    "Configure with -DCMAKE_INSTALL_PREFIX=${CMAKE_INSTALL_PREFIX} to have them agree.")
  endif()
endfunction()
guardian_install_files()
