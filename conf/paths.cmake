# paths.cmake — where the installed files are, for one installation prefix.
#
# guardian_install_paths(PREFIX) sets GUARDIAN_FULL_<DIR> (the absolute
# directories) and the GUARDIAN_* paths that the installed files name:
# guardian.module's `module:`, the .pc file's variables, guardian.conf's
# state_dir, the systemd unit's and guardian-service-setup's paths.  It
# follows GNUInstallDirs' rules (a relative CMAKE_INSTALL_<DIR> is under
# PREFIX; an absolute one stays; SYSCONFDIR, LOCALSTATEDIR and RUNSTATEDIR of
# the prefix / or /usr are /etc, /var and /run, of /opt/<pkg> /etc/opt/<pkg>
# and /var/opt/<pkg>), so that a prefix given only at install time
# (`cmake --install build --prefix /tmp/x`) gets the same layout as that
# prefix given at configure time.
#
# Used twice: by CMakeLists.txt at configure time (the build tree's copies,
# the paths compiled into the module and guardianctl) and by
# conf/install-files.cmake at install time, with the prefix of that install.
# Inputs: CMAKE_INSTALL_<DIR> (BINDIR SBINDIR LIBDIR INCLUDEDIR DATADIR
# SYSCONFDIR LOCALSTATEDIR), GUARDIAN_P11KIT_MODULE_DIR,
# GUARDIAN_SYSTEMD_UNIT_DIR, GUARDIAN_RUNTIME_DIR_NAME, GUARDIAN_TOKEN_LABEL,
# P11KIT_TOOL.

function(guardian_install_dir out prefix dir)
  set(rel "${CMAKE_INSTALL_${dir}}")
  if(IS_ABSOLUTE "${rel}")
    set(full "${rel}")
  elseif(dir MATCHES "^(SYSCONFDIR|LOCALSTATEDIR|RUNSTATEDIR)$" AND prefix MATCHES "^/(usr/?)?$")
    set(full "/${rel}")
  elseif(dir MATCHES "^(SYSCONFDIR|LOCALSTATEDIR)$" AND prefix MATCHES "^/opt/")
    string(REGEX REPLACE "/+$" "" p "${prefix}")
    set(full "/${rel}${p}")
  else()
    string(REGEX REPLACE "/+$" "" p "${prefix}")
    set(full "${p}/${rel}")
  endif()
  set(${out} "${full}" PARENT_SCOPE)
endfunction()

# A destination given relative to the prefix (p11-kit's module directory, the
# systemd unit directory), or absolute.
function(guardian_install_under out prefix dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    string(REGEX REPLACE "/+$" "" p "${prefix}")
    set(${out} "${p}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

macro(guardian_install_paths prefix)
  foreach(_d BINDIR SBINDIR LIBDIR INCLUDEDIR DATADIR SYSCONFDIR LOCALSTATEDIR)
    guardian_install_dir(GUARDIAN_FULL_${_d} "${prefix}" ${_d})
  endforeach()
  guardian_install_under(GUARDIAN_FULL_P11KIT_MODULE_DIR "${prefix}" "${GUARDIAN_P11KIT_MODULE_DIR}")
  guardian_install_under(GUARDIAN_FULL_SYSTEMD_UNIT_DIR "${prefix}" "${GUARDIAN_SYSTEMD_UNIT_DIR}")
  set(GUARDIAN_INSTALL_PREFIX "${prefix}")
  set(GUARDIAN_MODULE_DIR "${GUARDIAN_FULL_LIBDIR}/pkcs11")
  set(GUARDIAN_MODULE_PATH "${GUARDIAN_MODULE_DIR}/guardian-pkcs11.so")
  set(GUARDIAN_INCLUDE_DIR "${GUARDIAN_FULL_INCLUDEDIR}")
  set(GUARDIAN_CONF_DIR "${GUARDIAN_FULL_SYSCONFDIR}/guardian")
  set(GUARDIAN_STATE_DIR "${GUARDIAN_FULL_LOCALSTATEDIR}/lib/guardian")
  set(GUARDIAN_TOKEN_DIR "${GUARDIAN_FULL_LOCALSTATEDIR}/lib/guardian-softhsm")
  set(GUARDIAN_SOCKET "/run/${GUARDIAN_RUNTIME_DIR_NAME}/pkcs11.sock") # systemd's RuntimeDirectory= is under /run
  set(GUARDIAN_GUARDIANCTL_PATH "${GUARDIAN_FULL_BINDIR}/guardianctl")
  set(GUARDIAN_SETUP_TOOL "${GUARDIAN_FULL_SBINDIR}/guardian-service-setup")
  set(GUARDIAN_SERVER_COMMAND
      "${P11KIT_TOOL} server --foreground --provider ${GUARDIAN_MODULE_PATH} --name ${GUARDIAN_SOCKET} pkcs11:token=${GUARDIAN_TOKEN_LABEL}")
endmacro()
